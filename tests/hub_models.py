"""Tiny TF-Hub-style reusable SavedModels for tests.

Each follows TF-Hub's reusable SavedModel API: `__call__` traced for training
True and False, `variables`, `trainable_variables` and `regularization_losses`;
its "BatchNorm" keeps a moving mean that only a training call updates.
"""

import numpy as np
import tensorflow as tf

SIZE = 8
FEATURES = 6
REGULARIZATION = 0.01


class TinyHubModel(tf.__internal__.tracking.AutoTrackable):
    """Spatial mean -> dense -> batch-norm-like centring -> ReLU."""

    def __init__(self, width=FEATURES, dict_output=False):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(
            rng.normal(size=(3, width)), dtype=tf.float32, name="dense/kernel"
        )
        self.moving_mean = tf.Variable(
            tf.zeros(width), trainable=False, name="bn/moving_mean"
        )
        self.variables = [self.kernel, self.moving_mean]
        self.trainable_variables = [self.kernel]
        self.regularization_losses = [
            tf.function(
                lambda: REGULARIZATION * tf.reduce_sum(self.kernel**2),
                input_signature=[],
            )
        ]
        self.dict_output = dict_output

        @tf.function
        def call(images, training=False):
            hidden = tf.reduce_mean(images, axis=[1, 2]) @ self.kernel
            if training:
                batch_mean = tf.reduce_mean(hidden, axis=0)
                self.moving_mean.assign(0.9 * self.moving_mean + 0.1 * batch_mean)
                centred = hidden - batch_mean
            else:
                centred = hidden - self.moving_mean
            features = tf.nn.relu(centred)
            if dict_output:
                return {"default": features, "logits": hidden}
            return features

        spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)
        for training in (True, False):
            call.get_concrete_function(spec, training)
        self.__call__ = call


def save_hub_model(folder, **kwargs):
    tf.saved_model.save(TinyHubModel(**kwargs), str(folder))
    return str(folder)
