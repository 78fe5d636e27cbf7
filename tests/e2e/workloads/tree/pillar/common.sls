{% set admins = ['alice', 'bob'] %}
site:
  title: Welcome to {{ grains['id'] }}
  owner: {{ admins[0] }}
users: {{ admins | tojson }}
app:
  port: 8080
  debug: no
