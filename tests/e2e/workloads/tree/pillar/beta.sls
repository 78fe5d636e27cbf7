site:
  title: Beta site
app:
  port: 9090
role: beta
mine_functions:
  pillar_role:
    - mine_function: test.echo
    - beta-from-pillar
