"""The classroom: a class of students on one lab.

- :mod:`roster` — the students, their accounts (a sender and a receiver
  mailbox each, or a partner) and generated passwords;
- :mod:`plan` — what a lesson asks of each student in a class and the protocol
  evidence that grades it (the lesson file's ``[class]`` table);
- :mod:`attribution` — which student each session belongs to (by login, by the
  AUTH user name of a failed attempt, by client address);
- :mod:`progress` — each student's own lesson state: evidence, hints, attempts;
- :mod:`grading` — per-student results from a class run or from captures, as
  CSV, JSON, a Moodle grade-import CSV, and the quizzes as Moodle GIFT;
- :mod:`hub` — the live Step sink that feeds the web view;
- :mod:`web` — the teacher's dashboard, the projector, each student's page and
  the replay (twisted.web, server-sent events, every asset served locally);
- :mod:`handout` — a printable handout per student;
- :mod:`run` — ``gponsim class start``: the lab, the hub and the web view in one
  process.
"""
