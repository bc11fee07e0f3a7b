"""The canonical PyTorch "Training a Classifier" tutorial, run on the same data as scratchnet for comparison."""
