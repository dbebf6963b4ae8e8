from featkit.cli.app import main

if __name__ == "__main__":  # worker processes (--procs) import this module again: they must not rerun the command
    main()
