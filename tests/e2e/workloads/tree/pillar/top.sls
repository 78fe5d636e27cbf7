base:
  '*':
    - common
  'beta*':
    - beta
