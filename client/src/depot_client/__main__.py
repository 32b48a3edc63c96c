from depot_client.cli import main

main()
