# Pure rendering helpers of the gitlab-runner-tart module.
#
# Uses builtins only (no nixpkgs lib, no pkgs), so that CI can evaluate it with nothing but
# `nix-instantiate`. Every function takes values shaped like the module's options
# (`services.gitlab-runner-tart`, camelCase) and returns plain data or shell text; the module
# (`./default.nix`) declares the options and wires these results into nix-darwin.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    foldl'
    hasAttr
    head
    isAttrs
    isPath
    length
    map
    match
    removeAttrs
    replaceStrings
    sort
    storeDir
    substring
    stringLength
    toString
    ;

  # Removes the attributes whose value is null or an empty list.
  compact =
    attrs: removeAttrs attrs (filter (n: attrs.${n} == null || attrs.${n} == [ ]) (attrNames attrs));

  # Deep merge: attrsets merge key by key, anything else in `b` wins.
  recursiveMerge =
    a: b:
    foldl' (
      acc: n:
      acc
      // {
        ${n} = if hasAttr n acc && isAttrs acc.${n} && isAttrs b.${n} then recursiveMerge acc.${n} b.${n} else b.${n};
      }
    ) a (attrNames b);

  # A path literal or a string, as a string, without copying a path literal to the store.
  pathString = p: if p == null then null else if isPath p then toString p else p;

  isStorePath =
    p:
    let
      s = pathString p;
    in
    s != null && substring 0 (stringLength storeDir + 1) s == storeDir + "/";

  escapeShellArg = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";

  # The host side of a `host:guest[:ro]` volume, or null when the string is malformed.
  volumeHostPath =
    v:
    let
      m = match "(/[^:]*):(/[^:]*)(:ro)?" v;
    in
    if m == null then null else head m;

  runnerList = cfg: map (n: cfg.runners.${n} // { _attr = n; }) (sort (a: b: a < b) (attrNames cfg.runners));

  runnerName = r: if (r.name or null) != null then r.name else r._attr;
in
rec {
  inherit
    compact
    recursiveMerge
    pathString
    isStorePath
    escapeShellArg
    volumeHostPath
    ;

  # The driver's YAML config for one runner (JSON is valid YAML), before `settings` is merged
  # in last. Keys are the driver's snake_case names; unset options are left out so that the
  # driver's own defaults apply.
  driverConfig =
    {
      concurrency,
      tartExecutable,
      runner,
    }:
    recursiveMerge (compact {
      tart_executable = tartExecutable;
      inherit concurrency;
      builds_dir = runner.buildsDir or null;
      cache_dir = runner.cacheDir or null;
      volumes = runner.volumes or [ ];
      allow_images = runner.allowImages or [ ];
      exclude_images = runner.excludeImages or [ ];
      default_image = runner.defaultImage or null;
      pull_policy = runner.pullPolicy or null;
      allowed_pull_policies = runner.allowedPullPolicies or [ ];
      ssh_username = runner.sshUser or null;
      ssh_password_file = pathString (runner.sshPasswordFile or null);
      ssh_key_file = pathString (runner.sshKeyFile or null);
      cpu = runner.cpu or null;
      memory = runner.memory or null;
      display = runner.display or null;
      timeout = runner.timeout or null;
      transport = runner.transport or null;
    }) (runner.settings or { });

  # The spec that `gitlab-runner-tart-driver runner-config` turns into config.toml. It holds
  # token FILE PATHS only. `driverConfigFiles` maps each runner's attribute name to the
  # store path of its driver YAML.
  spec =
    {
      cfg,
      driver,
      driverConfigFiles,
    }:
    compact {
      concurrent = cfg.concurrency;
      check_interval = cfg.checkInterval or 3;
      shutdown_timeout = cfg.shutdownTimeout or null;
      log_level = cfg.logLevel or null;
      runners = map (
        r:
        compact {
          name = runnerName r;
          inherit (r) url;
          token_file = pathString r.authenticationTokenFile;
          limit = r.limit or null;
          executor = "custom";
          inherit driver;
          driver_config = driverConfigFiles.${r._attr};
          concurrency = cfg.concurrency;
          environment = r.environment or [ ];
        }
        // {
          extra = r.extraConfig or { };
        }
      ) (runnerList cfg);
      extra = cfg.extraConfig or { };
    };

  # Host directories to create at activation: { path; mode; own; } where `own` says whether
  # an existing directory is (re)chowned to the runner's user. Volume host paths are only
  # created when missing, never taken over.
  hostDirs =
    cfg:
    let
      owned = mode: path: {
        inherit path mode;
        own = true;
      };
      perRunner =
        r:
        map (owned "0750") (
          filter (p: p != null) [
            (pathString (r.buildsDir or null))
            (pathString (r.cacheDir or null))
          ]
        )
        ++ map (path: {
          inherit path;
          mode = "0750";
          own = false;
        }) (filter (p: p != null) (map volumeHostPath (r.volumes or [ ])));
      all = [
        (owned "0700" cfg.stateDir)
        (owned "0755" cfg.logDir)
      ]
      ++ builtins.concatMap perRunner (runnerList cfg);
      # Keep the first entry for each path.
      dedup = foldl' (
        acc: d: if builtins.any (x: x.path == d.path) acc then acc else acc ++ [ d ]
      ) [ ] all;
    in
    dedup;

  # Activation snippet (runs as root): creates the host directories. Shellcheck-clean.
  # `cfg.home` is the user's home directory.
  activationScript =
    cfg:
    let
      line =
        d:
        if d.own then
          "gitlab_runner_tart_dir ${d.mode} ${escapeShellArg d.path}"
        else
          "gitlab_runner_tart_dir_if_missing ${d.mode} ${escapeShellArg d.path}";
    in
    ''
      # gitlab-runner-tart: host directories for ${cfg.user}
      echo "setting up gitlab-runner-tart directories..." >&2
      (
        owner=${escapeShellArg cfg.user}
        home=${escapeShellArg (cfg.home or "/Users/${cfg.user}")}
        group=$(id -gn -- "$owner")
        gitlab_runner_tart_dir() {
          # Below the home directory, missing parents are created by (and for) the user.
          case "$2" in
            "$home"/*) sudo --user="$owner" -- mkdir -p -- "$2" ;;
            *) mkdir -p -- "$2" ;;
          esac
          chown -- "$owner:$group" "$2"
          chmod -- "$1" "$2"
        }
        gitlab_runner_tart_dir_if_missing() {
          if [ ! -e "$2" ]; then
            gitlab_runner_tart_dir "$1" "$2"
          fi
        }
        ${concatStringsSep "\n  " (map line (hostDirs cfg))}
      )
    '';

  # Body of the launch agent: render config.toml from the store spec and the token files,
  # then become gitlab-runner.
  agentScript =
    {
      driver,
      gitlabRunner,
      specFile,
      configFile,
      stateDir,
    }:
    ''
      set -eu
      umask 077
      mkdir -p ${escapeShellArg stateDir}
      ${escapeShellArg driver} runner-config --spec ${escapeShellArg specFile} --output ${escapeShellArg configFile}
      cd ${escapeShellArg stateDir}
      exec ${escapeShellArg gitlabRunner} run --config ${escapeShellArg configFile} --working-directory ${escapeShellArg stateDir}
    '';

  # Body of the periodic agent: the driver's orphan sweep, once per driver config.
  gcScript =
    {
      driver,
      configFiles,
      extraArgs ? [ ],
    }:
    ''
      status=0
      ${concatStringsSep "\n" (
        map (
          f:
          "${escapeShellArg driver} gc --config ${escapeShellArg f}${
            concatStringsSep "" (map (a: " " + escapeShellArg a) extraArgs)
          } || status=$?"
        ) configFiles
      )}
      exit "$status"
    '';

  # Assertions: [{ assertion; message; }], in nix-darwin's shape.
  assertions =
    cfg:
    let
      rs = runnerList cfg;
      names = map runnerName rs;
      dupNames = filter (n: length (filter (m: m == n) names) > 1) names;
      badVolumes = filter (v: volumeHostPath v == null) (builtins.concatMap (r: r.volumes or [ ]) rs);
      overLimit = filter (r: (r.limit or null) != null && r.limit > cfg.concurrency) rs;
      prefix = "services.gitlab-runner-tart";
    in
    [
      {
        assertion = cfg.concurrency <= 2 || (cfg.linuxGuestsOnly or false);
        message = "${prefix}.concurrency is ${toString cfg.concurrency}, but Apple's virtualization framework runs at most 2 macOS VMs per host; lower it to 2, or set ${prefix}.linuxGuestsOnly = true if every job uses a Linux image.";
      }
      {
        assertion = rs != [ ];
        message = "${prefix} is enabled but ${prefix}.runners is empty; declare at least one runner.";
      }
      {
        assertion = cfg.user != null;
        message = "${prefix}.user is not set; set system.primaryUser (or ${prefix}.user) to the user who is logged in to the GUI, since Tart needs a GUI session.";
      }
      {
        assertion = cfg.user == null || cfg.user == (cfg.primaryUser or cfg.user);
        message = "${prefix}.user (${toString cfg.user}) differs from system.primaryUser (${toString (cfg.primaryUser or null)}); nix-darwin installs user launch agents only for system.primaryUser, so make them equal.";
      }
      {
        assertion = dupNames == [ ];
        message = "${prefix}.runners: runner names must be unique; duplicated: ${concatStringsSep ", " dupNames}.";
      }
      {
        assertion = badVolumes == [ ];
        message = "${prefix}.runners.*.volumes: ${concatStringsSep ", " badVolumes} not in the form /host/path:/guest/path[:ro] with absolute paths.";
      }
      {
        assertion = overLimit == [ ];
        message = "${prefix}.runners: limit of ${concatStringsSep ", " (map runnerName overLimit)} exceeds concurrency (${toString cfg.concurrency}); the extra jobs could never run.";
      }
    ];

  # Warnings: a list of strings.
  warnings =
    cfg:
    builtins.concatMap (
      r:
      let
        n = r._attr;
      in
      (
        if isStorePath r.authenticationTokenFile then
          [
            "services.gitlab-runner-tart.runners.${n}.authenticationTokenFile (${pathString r.authenticationTokenFile}) is in the Nix store, which every local user can read; keep the token in a file outside the store (a quoted absolute path), mode 0600, owned by ${toString cfg.user}."
          ]
        else
          [ ]
      )
      ++ (
        if isStorePath (r.sshPasswordFile or null) then
          [
            "services.gitlab-runner-tart.runners.${n}.sshPasswordFile (${pathString r.sshPasswordFile}) is in the Nix store, which every local user can read; keep it outside the store (a quoted absolute path)."
          ]
        else
          [ ]
      )
    ) (runnerList cfg);

  inherit runnerList runnerName;
}
