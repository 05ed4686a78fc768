"""Text steps (CountVectorizer, TfidfVectorizer) in a scikit-learn → ONNX graph, made to match scikit-learn
without any particular system locale.

skl2onnx turns a vectorizer into StringNormalizer (lowercasing) → Tokenizer (a regular expression, RE2 in
onnxruntime) → TfIdfVectorizer (n-gram counts) → idf weights and norm. Three things need care:

- **Locale.** StringNormalizer lowercases under a named C++ locale, and skl2onnx leaves the name to
  onnxruntime's default, `en_US.UTF-8`: onnxruntime then fails to load the model on machines without that
  locale (slim images, this project's CI). skl2onnx's `locale` option (sklearn-onnx#1020) names another one:
  `C.UTF-8` ships with glibc, lowercases non-ASCII letters (É → é) in onnxruntime, and onnxruntime-web
  ignores the name (its WASM build lowercases the same way whatever the name).
- **Tokens.** scikit-learn's default pattern `(?u)\\b\\w\\w+\\b` is Python `re` with Unicode `\\w`; skl2onnx
  swaps it for `[a-zA-Z0-9_]+`, which drops accented words and keeps one-letter tokens (breaking bigrams
  around them). `[\\p{L}\\p{N}_]{2,}` is the same set of tokens in RE2: maximal runs of two or more letters,
  digits or underscores. Other patterns are refused (RE2 and `re` differ in syntax and in what `\\w`, `\\b`
  mean), as are analyzers other than 'word', callables, accent stripping and file inputs.
- **sublinear_tf.** skl2onnx computes log(tf + 1) where scikit-learn computes 1 + log(tf): rewritten.
- **The n-gram pool.** skl2onnx rebuilds each n-gram's tokens by guessing, and mis-splits an n-gram whose
  words aren't all in the vocabulary (max_df, max_features): 'bad film' becomes one token that never
  matches. It also leaves `ngram_counts` short when no n-gram of the longest length survived, which
  onnxruntime refuses. With the default patterns an n-gram is its tokens joined by one space, so the pool is
  rebuilt from the vocabulary itself after conversion.

HashingVectorizer has no skl2onnx converter (it hashes tokens with MurmurHash3 into 2**20 columns) and is
refused with the alternative.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ..errors import UnsupportedModelError

# what onnxruntime's StringNormalizer is told to lowercase under (see the module docstring)
TEXT_LOCALE = "C.UTF-8"
# scikit-learn token patterns and their exact RE2 equivalents
TOKEN_PATTERNS = {
    r"(?u)\b\w\w+\b": r"[\p{L}\p{N}_]{2,}",
    r"\b\w\w+\b": r"[\p{L}\p{N}_]{2,}",  # str patterns are Unicode in Python 3 either way
    r"(?u)\b\w+\b": r"[\p{L}\p{N}_]+",
    r"\b\w+\b": r"[\p{L}\p{N}_]+",
}
KNOWN_PATTERNS = " and ".join(f"'{p}'" for p in TOKEN_PATTERNS if p.startswith("(?u)"))


def is_vectorizer(est: Any) -> bool:
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    return isinstance(est, (CountVectorizer, HashingVectorizer))  # TfidfVectorizer is a CountVectorizer


def text_at_root(model: Any) -> bool:
    """The model itself takes a sequence of strings: it is, or its Pipeline starts with, a vectorizer."""
    first = model
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    return is_vectorizer(first)


def text_columns(model: Any, walk) -> set[str]:
    """Columns a ColumnTransformer hands to a vectorizer (a vectorizer takes one column, named as a string)."""
    from sklearn.compose import ColumnTransformer

    found = set()
    for est in walk(model):
        if isinstance(est, ColumnTransformer):
            for _, transformer, columns in est.transformers_:
                if isinstance(columns, str) and any(is_vectorizer(part) for part in walk(transformer)):
                    found.add(columns)
    return found


def check_text_steps(model: Any, walk) -> None:
    """Refuse, before conversion, a text step whose ONNX graph could not give scikit-learn's numbers."""
    from sklearn.feature_extraction.text import HashingVectorizer

    for vec in (est for est in walk(model) if is_vectorizer(est)):
        name = type(vec).__name__
        if isinstance(vec, HashingVectorizer):
            raise UnsupportedModelError(
                "HashingVectorizer can't be exported: skl2onnx has no converter for it (it hashes every token with "
                "MurmurHash3 into n_features=2**20 columns, which ONNX's text operators don't do). Use a "
                "TfidfVectorizer or CountVectorizer instead (max_features caps the width) and re-fit the pipeline."
            )
        refusal = _refusal(vec)
        if refusal:
            raise UnsupportedModelError(f"{name}({refusal[0]}) can't be exported exactly: {refusal[1]}")


def _refusal(vec: Any) -> tuple[str, str] | None:
    if vec.input != "content":
        return (f"input={vec.input!r}", "it reads files by name, and an ONNX graph only sees the strings it is "
                "given. Fit it with input='content' on the texts themselves.")
    if callable(vec.analyzer):
        return ("analyzer=<callable>", "a Python function can't run inside an ONNX graph. Use analyzer='word' "
                "with the default token_pattern.")
    if vec.analyzer != "word":
        return (f"analyzer={vec.analyzer!r}", "ONNX's Tokenizer splits text into words with a regular expression, "
                "and has no equivalent of scikit-learn's character n-grams (which first collapse whitespace, and "
                "for 'char_wb' pad each word with spaces). Use analyzer='word'.")
    if vec.tokenizer is not None or vec.preprocessor is not None:
        what = "tokenizer" if vec.tokenizer is not None else "preprocessor"
        return (f"{what}=<callable>", f"a custom {what} is Python code, which can't run inside an ONNX graph. Use "
                "the default token_pattern (lowercasing is built in).")
    if vec.strip_accents is not None:
        return (f"strip_accents={vec.strip_accents!r}", "ONNX's StringNormalizer can lowercase but not strip "
                "accents. Strip them before the text reaches the model, and fit with strip_accents=None.")
    if vec.token_pattern not in TOKEN_PATTERNS:
        return (f"token_pattern={vec.token_pattern!r}", "onnxruntime tokenizes with RE2, whose syntax and "
                "meaning of \\w and \\b differ from Python's re, so edgeport only translates patterns it knows "
                f"to be equal: {KNOWN_PATTERNS}. Fit with one of them, or leave token_pattern at its default.")
    if vec.stop_words is not None and vec.ngram_range[1] > 1:
        return (f"stop_words=..., ngram_range={vec.ngram_range}", "scikit-learn drops stop words before it forms "
                "n-grams ('not the end' gives the bigram 'not end'), and the ONNX graph can't drop tokens, so such "
                "n-grams would never be counted. Use stop words with ngram_range=(1, 1), or n-grams without "
                "stop words.")
    return None


def converter_options(model: Any, walk) -> dict[int, dict]:
    """skl2onnx options per vectorizer: the locale and the RE2 token pattern."""
    return {id(vec): {"locale": TEXT_LOCALE, "tokenexp": TOKEN_PATTERNS[vec.token_pattern]}
            for vec in walk(model) if is_vectorizer(vec)}


@contextlib.contextmanager
def tuple_vocabularies(model: Any, walk) -> Iterator[None]:
    """While skl2onnx converts, each vocabulary is keyed by token tuples, so it takes the n-grams' tokens as
    given instead of guessing how to split them (its guess raises on some vocabularies); restored after."""
    saved = []
    try:
        for vec in walk(model):
            if is_vectorizer(vec) and hasattr(vec, "vocabulary_"):
                saved.append((vec, vec.vocabulary_))
                vec.vocabulary_ = {tuple(gram.split(" ")): index for gram, index in vec.vocabulary_.items()}
        yield
    finally:
        for vec, vocabulary in saved:
            vec.vocabulary_ = vocabulary


def repair_graph(onx: Any, model: Any, walk) -> None:
    """Rebuild each TfIdfVectorizer node's n-gram pool from its vectorizer's vocabulary, and drop the
    StringNormalizer's stop words (skl2onnx removes whole texts equal to one; scikit-learn removes tokens,
    which never reach the vocabulary anyway)."""
    from onnx import helper

    vectorizers = [vec for vec in walk(model) if is_vectorizer(vec) and hasattr(vec, "vocabulary_")]
    for node in onx.graph.node:
        if node.op_type == "StringNormalizer":
            _set_attribute(node, "stopwords", None)
        if node.op_type != "TfIdfVectorizer":
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        grams = _pool_grams(attributes)
        vec = next((v for v in vectorizers if set(v.vocabulary_) == grams), None)
        if vec is None:  # not one of ours (or already right): leave it
            continue
        low, high = vec.ngram_range
        pool, counts, indexes, words = [], [], [], 0
        by_length: dict[int, list] = {}
        for gram, index in vec.vocabulary_.items():
            tokens = gram.split(" ")
            by_length.setdefault(len(tokens), []).append((tokens, int(index)))
        for n in range(1, high + 1):
            counts.append(words if n >= low else 0)
            for tokens, index in sorted(by_length.get(n, [])):
                pool.extend(tokens)
                indexes.append(index)
                words += n
        _set_attribute(node, "pool_strings", [t.encode("utf-8") for t in pool])
        _set_attribute(node, "ngram_counts", counts)
        _set_attribute(node, "ngram_indexes", indexes)
        _set_attribute(node, "weights", [1.0] * len(indexes))  # mode TF: counts; idf is applied after the node


def repair_sublinear_tf(onx: Any) -> None:
    """skl2onnx writes sublinear_tf as log(tf + 1); scikit-learn's is 1 + log(tf) where tf > 0, else 0. (They
    agree after an l2 norm only while every count is 1.) Rewrites each Add(tf, ones) → Log pair it makes."""
    from onnx import helper, numpy_helper

    graph = onx.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for log in [n for n in graph.node if n.op_type == "Log"]:
        add = producers.get(log.input[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2 or add.input[1] not in initializers:
            continue
        ones = numpy_helper.to_array(initializers[add.input[1]])
        if not initializers[add.input[1]].name.startswith("ones") or not (ones == 1).all():
            continue
        tf, base = add.input[0], log.output[0]
        zero = f"{base}_zero"
        graph.initializer.append(numpy_helper.from_array(np.zeros((1,), dtype=ones.dtype), zero))
        replacement = [
            helper.make_node("Log", [tf], [f"{base}_log"], name=f"{base}_Log"),
            helper.make_node("Add", [f"{base}_log", add.input[1]], [f"{base}_1p"], name=f"{base}_Add"),
            helper.make_node("Greater", [tf, zero], [f"{base}_present"], name=f"{base}_Greater"),
            helper.make_node("Where", [f"{base}_present", f"{base}_1p", zero], [base], name=f"{base}_Where"),
        ]
        nodes = list(graph.node)
        at = nodes.index(add)
        nodes = [n for n in nodes if n is not add and n is not log]
        nodes[at:at] = replacement
        del graph.node[:]
        graph.node.extend(nodes)


def _pool_grams(attributes: dict) -> set[str]:
    """The n-grams a TfIdfVectorizer node counts, each as its tokens joined by a space."""
    pool = [s.decode("utf-8") if isinstance(s, bytes) else s for s in attributes.get("pool_strings", [])]
    starts = list(attributes.get("ngram_counts", [])) + [len(pool)]
    grams = set()
    for level in range(len(starts) - 1):
        n, begin, end = level + 1, starts[level], starts[level + 1]
        grams.update(" ".join(pool[i:i + n]) for i in range(begin, end, n))
    return grams


def _set_attribute(node: Any, name: str, value: Any) -> None:
    from onnx import helper

    for i, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[i]
            break
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def locale_failure(text: str) -> str | None:
    """A true sentence for onnxruntime failing to build a StringNormalizer's locale, if that is what `text` says."""
    if "locale" not in text.lower():
        return None
    return (f"onnxruntime on this machine could not build the locale {TEXT_LOCALE!r} that the text step's "
            "lowercasing (ONNX StringNormalizer) runs under. glibc systems ship it; on others, install a C.UTF-8 "
            "locale, or fit the vectorizer with lowercase=False and lowercase the text before the model")
