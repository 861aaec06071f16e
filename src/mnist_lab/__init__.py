"""mnist_lab: MNIST with Lightning and Hydra, from the Keras tutorial's MLP to sweeps on a Slurm cluster.

Commands (python -m mnist_lab.X; README.md shows each with its output):
    train        fit, test the best checkpoint, draw the figures; -m sweeps, resume=, export=true
    export       a run's best checkpoint as ONNX, .pt2, TorchScript and safetensors, each checked
    predict      a run's exported ONNX model on the test set or on your own images (no torch)
    activations  the convnet's feature maps for one test digit
    explore      the data: shapes, dtypes, one digit, a grid of samples
    figures      draw a finished run's figures again
    compare      a sweep's variants over seeds: intervals, paired differences, curves
    reproduce    run a finished run again from its saved config and compare its metrics

Parts, by role (one line each; a module's docstring says more):
  configuration
    config       the typed config schema, every check of a config, the run-invariant keys, compose()
    helptext     train --help: groups, choices, every key's value and meaning from config's comments
    usage        the other commands' --help, and their one line for a missing argument
    cmdline      train's command line, checked and reordered before Hydra reads it
  data
    idx          the four MNIST files: their names, checks, checksums and reading (numpy only)
    data         MNISTDataModule: the splits as tensors on the run's device, batches or chunks of K batches
    prepare      a person's image made MNIST-like (numpy and Pillow only)
  a run
    assemble     the run's parts from its config: plan, data module, LitClassifier, Trainer
    resume       where a run starts from: new, resume=, a requeued Slurm job, a resumed sweep's job
    models       the plain nets (MLP, convnet), their registry and the Keras-style summary
    optim        the optimizers' registry, Keras's RMSprop among them
    module       LitClassifier: loss, metrics, optimizer; checkpoint loading (weights_only)
    fastpath     FastPlan (decided once a run) and ChunkRunner: K steps per training_step, CUDA graphs
    stack        stacked runs: N nets of one kind trained as one (torch.func), each its own seed, data and lr
  what watches a run
    reporting    callbacks that report: epoch time, a line per epoch, the progress bar, figures, trials
    guards       callbacks that protect: non-finite loss, Ctrl-C/SIGTERM, atomic checkpoints, DDP's end
    loggers      TensorBoard, CSV and MLflow: built from config, HPARAMS, figures, scalars read back
    console      what a run prints, and its train.log
    provenance   which code, data, machine and command made a run (provenance.yaml)
  run folders, sweeps and studies
    runs         a run folder's layout, atomic writes, a sweep folder's record
    sweeps       the resumable sweeper's logic: skip finished jobs, resume interrupted ones
    sweeplog     sweep.log: one line per job (a Hydra callback)
    stacking     stack=N: a sweep's jobs grouped into stacks, each trained by stack.train_stack as Hydra jobs
    study        the Optuna sweeper's logic: search space, journal, pruning, best.yaml, plots
  pictures and errors
    drawing      every figure, drawn with matplotlib from numpy arrays
    errors       the errors a user can meet, one line each
Hydra finds the plugins in src/hydra_plugins/: the resumable sweeper, the Optuna sweeper and the Slurm
launcher (submitit's, taking numbered jobs). Where new pieces go, and which modules import heavy libraries
inside functions and why: README.md, "How the code is laid out".
"""
