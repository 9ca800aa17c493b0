from nas_cli.cli import main

main()
