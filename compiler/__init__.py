"""lmqc.compiler: query source -> AST -> per-hole IR -> byte DFA -> token automaton -> artifact.

Never imports model code (llama_cpp); the runtime supplies vocabularies as plain data.
"""
