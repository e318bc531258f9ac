"""Using a finished run: loading it (inference), evaluating, predicting on images, exporting."""
