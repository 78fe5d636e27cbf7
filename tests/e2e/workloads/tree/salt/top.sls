base:
  'alpha*':
    - web
  'beta*':
    - app
