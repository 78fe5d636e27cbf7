include:
  - web

app_conf:
  file.managed:
    - name: {{ grains['outdir'] }}/app.conf
    - contents: |
        port={{ pillar['app']['port'] }}
        role={{ pillar.get('role', 'none') }}
    - require:
      - file: web_site
      - cmd: web_reload
