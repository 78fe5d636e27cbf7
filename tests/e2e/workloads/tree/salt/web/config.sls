web_config:
  file.managed:
    - name: {{ grains['outdir'] }}/index.html
    - source: salt://web/files/index.html.j2
    - template: jinja
    - makedirs: True
    - mode: '0644'
