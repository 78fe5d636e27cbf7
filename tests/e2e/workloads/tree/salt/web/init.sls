include:
  - web.config

web_site:
  file.recurse:
    - name: {{ grains['outdir'] }}/site
    - source: salt://web/site
    - require:
      - file: web_config

web_reload:
  cmd.run:
    - name: echo reloaded for {{ pillar['site']['title'] }} > {{ grains['outdir'] }}/reloaded
    - onchanges:
      - file: web_config
