"""The spectral analysis of Section 3 of the paper, on any finished run directory.

effective_rank.py (Table 2), eigen_bands.py (Figures 2 and 4: t-SNE of eigenspace bands),
dims_sweep.py (Figure 1: training with directions removed or lifted; the edit itself is
guard/dimension_edit.py, a layer the dimension-edit defense inserts),
proposition.py (Proposition 1 and Remark 1 checked numerically), run_loading.py (a run's model and
data). `eigenguard analyze ...` is the command line.
"""
