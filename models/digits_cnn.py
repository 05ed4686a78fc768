"""Digits: a small Keras CNN on scikit-learn's 8×8 digit images, its scaling inside the model.

Exported to TF.js (the fragile path edgeport hides), with model.onnx beside it for the server.
"""
from __future__ import annotations

from . import Example


def train(epochs: int = 12, seed: int = 0) -> Example:
    from edgeport.keras_loading import import_tensorflow

    import_tensorflow()  # quietly: TensorFlow's C++ start-up chatter is not for users
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    images = digits.images.astype("float32")[..., None]  # (n, 8, 8, 1), values 0..16
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 16)(inputs)  # the preprocessing ships with the model
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, digits.target, epochs=epochs, batch_size=64, verbose=0)
    sample = images[np.random.default_rng(seed).permutation(len(images))[:200]]
    return Example("digits-cnn", model, sample, "handwritten digit from an 8×8 drawing (Keras CNN → TF.js)",
                   framework="keras", target="tfjs")
