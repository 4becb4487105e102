from falaj.control.app import main

main()
