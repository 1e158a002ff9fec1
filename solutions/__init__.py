"""Reference answers to the exercises: the same functions as ``exercises/``, solved.

Grade them as you would grade your own (every test should pass):

    .venv/bin/python -m pytest tests/exercises --impl solutions      # or: make grade IMPL=solutions

Look here after you have tried: the lessons explain the ideas, the exercises make you write them,
and these files are one way (not the only way) to get them right.
"""
