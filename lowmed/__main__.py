from lowmed.cli import main

main()
