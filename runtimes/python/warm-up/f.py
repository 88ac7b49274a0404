# The stand-in lambda that zygotes and blanks load and call once to warm
# up (runtimes/python/ol_zygote.py, serve_stand_in).


def f(event):
    return event
