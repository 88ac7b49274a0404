"""Run with `python3 -m unittest` in this directory (needs `pip install -r requirements.txt`)."""

import unittest

from app import app


class TestApp(unittest.TestCase):
    def test_greets(self):
        client = app.test_client()
        self.assertEqual(client.post("/", json={"name": "Alice"}).get_json(), {"greeting": "Hello, Alice!"})
        self.assertEqual(client.get("/?name=Bob").get_json(), {"greeting": "Hello, Bob!"})


if __name__ == "__main__":
    unittest.main()
