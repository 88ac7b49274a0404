"""Run with `python3 -m unittest` in this directory."""

import unittest
from types import SimpleNamespace

from f import f


def ctx(method="POST", query=None):
    return SimpleNamespace(method=method, path="/", query=query or {}, query_string="", headers={}, request_id="test")


class TestF(unittest.TestCase):
    def test_greets_the_name_in_the_body(self):
        self.assertEqual(f({"name": "Alice"}, ctx()), {"greeting": "Hello, Alice!", "method": "POST"})

    def test_greets_the_name_in_the_query(self):
        self.assertEqual(f(None, ctx("GET", {"name": "Bob"}))["greeting"], "Hello, Bob!")


if __name__ == "__main__":
    unittest.main()
