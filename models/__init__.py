"""The ML core shared by training and the worker: sampling, decoding, face crops, backbones,
sequence classifiers, the ensemble and the one-file checkpoint. Knows nothing of Kafka or Redis."""
