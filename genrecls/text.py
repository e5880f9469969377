"""Text beside the poster (reports 000 and 001): cleaning, and the model's text branch.

A title or plot summary enters the model as a raw string. Two Keras
`TextVectorization` layers, adapted on the training split only, turn it into
TF-IDF weights of word 1-2-grams and character 2-4-grams (titles are short:
"Shawshank" and "Shawshanks" share most character n-grams); a small dense
layer with dropout reduces them to `width` numbers, which are concatenated
with the pooled poster features before the head. Everything is Keras
layers, so an exported model takes raw strings and needs nothing from this
package. Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import math
import unicodedata

TEXT_INPUT = "text"  # the name of a model's text input (images come in as "image")
MAX_TEXT_CHARS = 5_000  # longer texts are cut here when read: a plot summary keeps its first ~800 words
WORD_TOKENS = 10_000  # vocabulary caps: the most frequent n-grams of the training texts
CHAR_TOKENS = 10_000


def clean_text(value) -> str:
    """A table cell -> the text the model sees: "" when missing, control characters (NUL...) as spaces,
    whitespace collapsed, at most MAX_TEXT_CHARS characters."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in str(value))
    return " ".join(text.split())[:MAX_TEXT_CHARS]


class TextEncoder:
    """The text branch: vectorizers adapted once on the training texts, layers built per model.

    Adapting is the slow part (seconds per thousand texts), so it happens once;
    each model of a run (each OvA member, each tuner trial) gets its own copy of
    the adapted vectorizers (Keras cannot reload a layer shared by models that
    are saved separately) and its own dense layer.
    """

    def __init__(self, texts, width: int = 64, dropout: float = 0.5):
        import tensorflow as tf
        from keras import layers

        self.width, self.dropout = width, dropout
        self.words = layers.TextVectorization(WORD_TOKENS, ngrams=2, output_mode="tf_idf", name="text_words")
        self.chars = layers.TextVectorization(CHAR_TOKENS, standardize="lower", split="character", ngrams=(2, 3, 4),
                                              output_mode="tf_idf", name="text_chars")
        data = tf.data.Dataset.from_tensor_slices(tf.constant([str(t) for t in texts], tf.string)).batch(1024)
        self.words.adapt(data)
        self.chars.adapt(data)

    def branch(self, text, width: int | None = None, dropout: float | None = None):
        """String tensor (N,) -> (N, width) text features, for a functional model."""
        from keras import layers

        width = self.width if width is None else width
        dropout = self.dropout if dropout is None else dropout
        x = layers.Concatenate(name="text_ngrams")([_copy(self.words)(text), _copy(self.chars)(text)])
        if dropout:
            x = layers.Dropout(dropout, name="text_dropout_in")(x)
        x = layers.Dense(width, activation="relu", name="text_dense")(x)
        if dropout:
            x = layers.Dropout(dropout, name="text_dropout")(x)
        return x


def _copy(layer):
    """A new TextVectorization with an adapted one's vocabulary and IDF weights, without adapting again."""
    from keras import layers

    idf = layer._lookup_layer.idf_weights_const  # Keras has no public getter of the adapted IDF weights
    return layers.TextVectorization.from_config(
        {**layer.get_config(), "vocabulary": layer.get_vocabulary(), "idf_weights": [float(w) for w in idf.numpy()]})
