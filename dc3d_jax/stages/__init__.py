"""One module per stage (init, conversion from the previous stage, train_step); common.py
holds the TrainState and the loop they share."""
