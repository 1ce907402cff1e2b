"""A query as a Python function (``python examples/greet.py``): the docstring is read as written in this file, so
``\n`` inside its query strings stays an escape even though the docstring is not raw."""

import lmqc


@lmqc.query(model="gemma-3-270m")
def greet(name):
    '''lmql
    "Q: Say 'Hello, {name}!'\n"
    "A: [RESPONSE]" where len(TOKENS(RESPONSE)) < 20
    '''


if __name__ == "__main__":
    print(greet("Bob").variables["RESPONSE"])
