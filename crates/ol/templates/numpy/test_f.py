"""Run with `python3 -m unittest` in this directory (needs `pip install -r requirements.txt`)."""

import unittest

from f import f


class TestF(unittest.TestCase):
    def test_sums(self):
        self.assertEqual(f({"values": [1, 2, 3, 4]}), {"sum": 10.0, "mean": 2.5})


if __name__ == "__main__":
    unittest.main()
