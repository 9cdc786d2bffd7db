from fedretrain.simulate import main

main()
