from robaudit.cli import main

main()
