from treewatch.cli import main

main()
