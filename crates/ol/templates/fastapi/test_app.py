"""Run with `python3 -m unittest` in this directory (needs `pip install -r requirements.txt`)."""

import unittest

from app import greet, greet_body


class TestApp(unittest.TestCase):
    def test_greets(self):
        self.assertEqual(greet("Bob"), {"greeting": "Hello, Bob!"})
        self.assertEqual(greet_body({"name": "Alice"}), {"greeting": "Hello, Alice!"})


if __name__ == "__main__":
    unittest.main()
