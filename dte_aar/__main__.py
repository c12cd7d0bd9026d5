from dte_aar.cli import main

main()
