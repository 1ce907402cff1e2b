"""lmqc.runtime: vocabularies from models, backends, decoders, the prompt interpreter and results.

``llama_cpp`` is imported only when a llama.cpp model is actually used.
"""
