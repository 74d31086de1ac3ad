from gponsim.cli import main

main()
