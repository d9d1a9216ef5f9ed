"""The offline sample corpus: real English text that ships with every CPython.

The CPU demo and the benchmarks need a corpus without network access. CPython carries about 1.8 MB of
edited English prose: the `pydoc_data` topics (the language reference behind `help()`) and the standard
library's docstrings. Docstrings are read with `ast` from the source files, never by importing modules
(imports have side effects and depend on installed extras), so the corpus is the same bytes on every
run of the same Python version.
"""

import ast
import json
import os
import sysconfig
from typing import Iterator, Tuple

#: Stdlib folders that hold tests, tools or vendored code rather than documented modules.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
             "idlelib", "lib2to3", "turtledemo", "ensurepip", "venv", "tkinter"}

#: Shorter docstrings are mostly one-line summaries ("Return x."), not prose.
MIN_DOCSTRING_CHARS = 200


def build_sample_corpus(out_path: str) -> dict:
    """Write the corpus as JSONL ({"id", "source", "text"} per line); return {"documents", "bytes"}.

    Order: pydoc topics sorted by name, then docstrings of modules, classes and functions, walking
    the stdlib in sorted path order. The file is written under a temporary name and renamed, so a
    half-written corpus never sits at `out_path`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.{os.getpid()}.tmp"
    documents = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for source, text in _documents():
            record = {"id": documents, "source": source, "text": text}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            documents += 1
    os.replace(tmp, out_path)
    return {"documents": documents, "bytes": os.path.getsize(out_path)}


def _documents() -> Iterator[Tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc_data:{name}", topics[name].strip()
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in _stdlib_sources(stdlib):
        module = os.path.relpath(path, stdlib)[: -len(".py")].replace(os.sep, ".")
        for qualname, doc in _docstrings(path):
            yield f"stdlib:{module}{qualname}", doc


def _stdlib_sources(stdlib: str) -> Iterator[str]:
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _docstrings(path: str) -> Iterator[Tuple[str, str]]:
    """(":Class.method"-style suffix, cleaned docstring) for every long docstring in the file."""
    with open(path, "rb") as f:  # bytes, so ast honours a file's coding cookie
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError):
        return  # a few stdlib files are templates (invalid Python); they hold no prose
    stack = [("", tree)]
    while stack:
        qualname, node = stack.pop(0)
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= MIN_DOCSTRING_CHARS:
            yield qualname, doc
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.append((f"{qualname}{'.' if qualname else ':'}{child.name}", child))
