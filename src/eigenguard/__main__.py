from eigenguard.cli import main

main()
