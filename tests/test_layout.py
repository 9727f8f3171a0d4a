"""The house: no import cycles among rnem_jax's modules (function-level imports counted), and
results/ holds summaries and figures, not code or bulk."""

import re

from conftest import REPO


def _imports() -> dict[str, set[str]]:
  """module -> the rnem_jax modules it imports anywhere in its text."""
  sources = {}
  for path in (REPO / "rnem_jax").rglob("*.py"):
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    sources[name.removesuffix(".__init__")] = path.read_text()
  edges = {m: set() for m in sources}
  for module, text in sources.items():
    for base, names in re.findall(r"^\s*from (rnem_jax[\w.]*) import \(?([\w, \n]+)\)?", text,
                                  re.M):
      for n in (part.split(" as ")[0].strip() for part in names.split(",")):
        target = f"{base}.{n}" if f"{base}.{n}" in sources else base
        edges[module].add(target)
    edges[module] |= {b for b in re.findall(r"^\s*import (rnem_jax[\w.]*)", text, re.M)
                      if b in sources}
    edges[module] -= {module, "rnem_jax"}
  return edges


def _cycle(edges: dict[str, set[str]]):
  state = {}

  def visit(m, path):
    state[m] = "open"
    for n in sorted(edges.get(m, ())):
      if state.get(n) == "open":
        return path[path.index(n):] + [n]
      if n not in state and (found := visit(n, path + [n])):
        return found
    state[m] = "done"
    return None

  for m in sorted(edges):
    if m not in state and (found := visit(m, [m])):
      return found
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
  edges = _imports()
  assert {"rnem_jax.config"} <= edges["rnem_jax.visualize"]   # the parser sees imports
  # plotting only draws: what restores and runs a model is evaluate's
  assert edges["rnem_jax.visualize"] == {"rnem_jax.config"}
  assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_results_hold_summaries_and_figures_only():
  files = [p for p in (REPO / "results").rglob("*") if p.is_file()]
  assert not [p for p in files if p.suffix == ".py"]
  assert sum(p.stat().st_size for p in files) <= 5 * 2**20
