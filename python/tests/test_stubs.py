"""stratalloc_py.pyi names what the module has: every class, exception, method and
attribute, both ways, and the exceptions' bases."""

import ast
import pathlib

import stratalloc_py

STUB = pathlib.Path(__file__).parent.parent / "stratalloc_py.pyi"


def stub_classes():
    tree = ast.parse(STUB.read_text())
    classes, names = {}, set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign):
                    members.add(item.target.id)
            classes[node.name] = (members, [ast.unparse(b) for b in node.bases])
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    return classes, names


def test_the_stub_names_every_public_name_of_the_module():
    classes, names = stub_classes()
    assert set(stratalloc_py.__all__) == set(classes) | names


def test_the_stub_names_every_method_and_attribute():
    classes, _ = stub_classes()
    for name, (members, bases) in classes.items():
        cls = getattr(stratalloc_py, name)
        if issubclass(cls, BaseException):
            assert [getattr(stratalloc_py, b, None) or __builtins__[b] for b in bases] == [
                cls.__bases__[0]
            ], name
            continue
        runtime = {m for m in dir(cls) if not m.startswith("__")}
        declared = {m for m in members if not m.startswith("__")}
        assert runtime == declared, name
