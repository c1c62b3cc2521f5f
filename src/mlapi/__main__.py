from mlapi.cli import main

main()
