from featkit.cli.app import main

main()
