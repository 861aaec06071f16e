"""mnist_lab's Hydra plugins. Hydra imports every module here at start-up, so they stay small and import
their logic (mnist_lab.sweeps) without torch.

    resumable_sweeper.ResumableSweeper   hydra/sweeper=resumable (the default): a grid sweep that resumes
    slurm_launcher.SlurmLauncher         hydra/launcher=slurm: submitit's, also launching numbered jobs
"""
