"""mnist_lab's Optuna sweeper for Hydra (hydra/sweeper=optuna): see mnist_lab.study."""
