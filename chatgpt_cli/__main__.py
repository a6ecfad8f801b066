from chatgpt_cli.cli import main

main()
