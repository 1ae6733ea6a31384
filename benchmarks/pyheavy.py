"""A task module with the imports of a real analysis step (the `python` scenario's
preload case): ~0.17 s of CPU to import here, most of it psycopg and asyncio. Without
``python_preload`` every interpreter imports it at its first call; with it, each node's
zygote does, once."""

from __future__ import annotations

import argparse  # noqa: F401
import asyncio  # noqa: F401
import concurrent.futures  # noqa: F401
import csv  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import email.mime.multipart  # noqa: F401
import fractions  # noqa: F401
import http.client  # noqa: F401
import logging.handlers  # noqa: F401
import multiprocessing.pool  # noqa: F401
import sqlite3  # noqa: F401
import ssl  # noqa: F401
import statistics  # noqa: F401
import tarfile  # noqa: F401
import time
import unittest  # noqa: F401
import urllib.request  # noqa: F401
import xml.etree.ElementTree  # noqa: F401
import zipfile  # noqa: F401

import psycopg  # noqa: F401


def sleep(s: float) -> None:
    time.sleep(s)
