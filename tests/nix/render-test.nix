# Tests of darwin-modules/render.nix that need nothing but Nix itself (no nixpkgs lib, no
# nix-darwin): run by ci.sh. Evaluates to { failures = [ names ]; passed = N; }.
let
  render = import ../../darwin-modules/render.nix;
  agent = import ../../darwin-modules/agent.nix;
  agentArgs = {
    shell = "/bin/bash";
    driver = "/d";
    gitlabRunner = "/g";
    specFile = "/s.json";
    configFile = "/h/.gitlab-runner/config.toml";
    stateDir = "/h/.gitlab-runner";
    logFile = "/h/logs/gitlab-runner.log";
    home = "/h";
    path = [
      "/d/bin"
      "/usr/bin"
    ];
    drainTimeout = 60;
    generationFile = "/var/db/r/agent-generation";
  };
  agentText = agent.script agentArgs;
  inherit (builtins)
    all
    any
    attrNames
    filter
    fromJSON
    length
    toJSON
    ;
  # Substring test without regexes.
  hasInfix =
    needle: s:
    let
      n = builtins.stringLength needle;
      l = builtins.stringLength s;
      go = i: i + n <= l && (builtins.substring i n s == needle || go (i + 1));
    in
    go 0;

  runner = {
    url = "https://gitlab.example.com";
    authenticationTokenFile = "/Users/ci/secrets/a.token";
    name = null;
    limit = null;
    environment = [ ];
    buildsDir = null;
    cacheDir = null;
    volumes = [ ];
    allowImages = [ ];
    excludeImages = [ ];
    defaultImage = null;
    pullPolicy = null;
    allowedPullPolicies = [ ];
    sshUser = null;
    sshPasswordFile = null;
    sshKeyFile = null;
    cpu = null;
    memory = null;
    display = null;
    timeout = null;
    transport = null;
    settings = { };
    extraConfig = { };
  };
  full = runner // {
    name = "mac one";
    limit = 2;
    environment = [ "A=1" ];
    buildsDir = "/Users/ci/b";
    cacheDir = "/Users/ci/c";
    volumes = [
      "/data/x:/Volumes/x:ro"
      "/Users/ci/c:/Volumes/c"
    ];
    allowImages = [ "^ghcr\\.io/.*$" ];
    excludeImages = [ "bad" ];
    defaultImage = "img:latest";
    pullPolicy = "never";
    allowedPullPolicies = [
      "never"
      "if-not-present"
    ];
    sshUser = "admin";
    sshPasswordFile = "/Users/ci/secrets/guest";
    sshKeyFile = "/Users/ci/.ssh/id";
    cpu = "auto";
    memory = 8192;
    display = "1024x768";
    timeout = 600;
    transport = "ssh";
    settings = {
      macos_vm_limit = 2;
      timeout = 900;
    };
    extraConfig = {
      output_limit = 8192;
    };
  };
  cfg = {
    enable = true;
    user = "ci";
    primaryUser = "ci";
    home = "/Users/ci";
    concurrency = 2;
    linuxGuestsOnly = false;
    checkInterval = 3;
    shutdownTimeout = null;
    logLevel = null;
    stateDir = "/Users/ci/.gitlab-runner";
    configFile = "/Users/ci/.gitlab-runner/config.toml";
    logDir = "/Users/ci/Library/Logs/gitlab-runner-tart";
    extraConfig = { };
    runners = {
      b = runner;
      a = full;
    };
  };
  failing = c: map (a: a.message) (filter (a: !a.assertion) (render.assertions c));
  onlyFailure =
    prefix: c:
    let
      f = failing c;
    in
    length f == 1 && hasInfix prefix (builtins.head f);

  spec = fromJSON (
    toJSON (
      render.spec {
        inherit cfg;
        driver = "/nix/store/x-driver/bin/gitlab-runner-tart-driver";
        driverConfigFiles = {
          a = "/nix/store/a.yaml";
          b = "/nix/store/b.yaml";
        };
      }
    )
  );
  activation = render.activationScript cfg;

  checks = {
    "driverConfig: minimal runner has only tart and concurrency" =
      render.driverConfig {
        concurrency = 2;
        tartExecutable = "/t/bin/tart";
        inherit runner;
      } == {
        tart_executable = "/t/bin/tart";
        concurrency = 2;
      };
    "driverConfig: every typed option, settings merged last" =
      render.driverConfig {
        concurrency = 2;
        tartExecutable = "/t/bin/tart";
        runner = full;
      } == {
        tart_executable = "/t/bin/tart";
        concurrency = 2;
        builds_dir = "/Users/ci/b";
        cache_dir = "/Users/ci/c";
        volumes = full.volumes;
        allow_images = full.allowImages;
        exclude_images = [ "bad" ];
        default_image = "img:latest";
        pull_policy = "never";
        allowed_pull_policies = full.allowedPullPolicies;
        ssh_username = "admin";
        ssh_password_file = "/Users/ci/secrets/guest";
        ssh_key_file = "/Users/ci/.ssh/id";
        cpu = "auto";
        memory = 8192;
        display = "1024x768";
        timeout = 900;
        transport = "ssh";
        macos_vm_limit = 2;
      };
    "driverConfig: YAML (JSON) round-trips" =
      fromJSON (
        toJSON (
          render.driverConfig {
            concurrency = 1;
            tartExecutable = "/t";
            runner = full;
          }
        )
      ) == render.driverConfig {
        concurrency = 1;
        tartExecutable = "/t";
        runner = full;
      };
    "spec: concurrent equals every runner's concurrency" =
      spec.concurrent == 2 && all (r: r.concurrency == 2) spec.runners;
    "spec: runners sorted by attribute, names defaulted" =
      map (r: r.name) spec.runners == [
        "mac one"
        "b"
      ];
    "spec: token file paths only" = map (r: r.token_file) spec.runners == [
      "/Users/ci/secrets/a.token"
      "/Users/ci/secrets/a.token"
    ];
    "spec: executor, driver, config" = all (
      r: r.executor == "custom" && r.driver == "/nix/store/x-driver/bin/gitlab-runner-tart-driver"
    ) spec.runners && map (r: r.driver_config) spec.runners == [
      "/nix/store/a.yaml"
      "/nix/store/b.yaml"
    ];
    "spec: optional keys omitted when unset" =
      !(spec ? shutdown_timeout)
      && !(spec ? log_level)
      && !(builtins.elemAt spec.runners 1 ? limit);
    "spec: limit, environment, extra" =
      let
        a = builtins.head spec.runners;
      in
      a.limit == 2 && a.environment == [ "A=1" ] && a.extra == { output_limit = 8192; };
    "spec: globals" =
      (fromJSON (
        toJSON (
          render.spec {
            cfg = cfg // {
              shutdownTimeout = 60;
              logLevel = "debug";
              checkInterval = 10;
              extraConfig.listen_address = ":9252";
            };
            driver = "/d";
            driverConfigFiles = {
              a = "/a";
              b = "/b";
            };
          }
        )
      )) == {
        concurrent = 2;
        check_interval = 10;
        shutdown_timeout = 60;
        log_level = "debug";
        extra.listen_address = ":9252";
        runners = map (r: r // { driver = "/d"; }) (
          map (r: r // { driver_config = if r.name == "b" then "/b" else "/a"; }) spec.runners
        );
      };
    "assertions: good config passes" = failing cfg == [ ];
    "assertions: concurrency 3 fires" = onlyFailure "concurrency is 3" (
      cfg // { concurrency = 3; }
    );
    "assertions: concurrency 3 allowed for Linux guests" =
      failing (
        cfg
        // {
          concurrency = 3;
          linuxGuestsOnly = true;
        }
      ) == [ ];
    "assertions: no runners" = onlyFailure "runners is empty" (cfg // { runners = { }; });
    "assertions: no user" = any (hasInfix "user is not set") (
      failing (
        cfg
        // {
          user = null;
          primaryUser = null;
        }
      )
    );
    "assertions: user is not the primary user" = onlyFailure "differs from system.primaryUser" (
      cfg // { user = "other"; }
    );
    "assertions: a user nix-darwin creates (knownUsers) without home" =
      onlyFailure
        "users.users.ci.home is not set, but ci is in users.knownUsers, so nix-darwin creates ci with the home directory /var/empty, where Tart cannot keep its VMs; set users.users.ci.home = \"/Users/ci\"; users.users.ci.createHome = true; (a ci created earlier with /var/empty also needs: sudo dscl . -create /Users/ci NFSHomeDirectory /Users/ci)"
        (
          cfg
          // {
            knownUsers = [ "ci" ];
            declaredHome = null;
          }
        );
    "assertions: a user nix-darwin creates, with home" =
      failing (
        cfg
        // {
          knownUsers = [ "ci" ];
          declaredHome = "/Users/ci";
        }
      ) == [ ];
    "assertions: an existing user (not in knownUsers) without home" =
      failing (
        cfg
        // {
          knownUsers = [ "other" ];
          declaredHome = null;
        }
      ) == [ ];
    "assertions: duplicate names" = onlyFailure "must be unique" (
      cfg // { runners = cfg.runners // { c = runner // { name = "mac one"; }; }; }
    );
    "assertions: malformed volume" = onlyFailure "relative:/x" (
      cfg // { runners.a = full // { volumes = [ "relative:/x" ]; }; }
    );
    "assertions: limit above concurrency" = onlyFailure "exceeds concurrency" (
      cfg // { runners.a = full // { limit = 3; }; }
    );
    "warnings: none for paths outside the store" = render.warnings cfg == [ ];
    "warnings: token file in the store" =
      let
        w = render.warnings (
          cfg
          // {
            runners.a = full // {
              authenticationTokenFile = "${builtins.storeDir}/abc-token";
              sshPasswordFile = "${builtins.storeDir}/abc-pw";
            };
          }
        );
      in
      length w == 2
      && hasInfix "authenticationTokenFile" (builtins.head w)
      && hasInfix "sshPasswordFile" (builtins.elemAt w 1);
    "path literals are not copied to the store" =
      render.pathString ./render-test.nix == toString ./render-test.nix
      && !(render.isStorePath ./render-test.nix);
    "hostDirs: state, logs, builds, cache, volumes; deduplicated" =
      render.hostDirs cfg == [
        {
          path = "/Users/ci/.gitlab-runner";
          mode = "0700";
          own = true;
        }
        {
          path = "/Users/ci/Library/Logs/gitlab-runner-tart";
          mode = "0755";
          own = true;
        }
        {
          path = "/Users/ci/b";
          mode = "0750";
          own = true;
        }
        {
          path = "/Users/ci/c";
          mode = "0750";
          own = true;
        }
        {
          path = "/data/x";
          mode = "0750";
          own = false;
        }
      ];
    "activation: creates each directory, quoted" =
      hasInfix "gitlab_runner_tart_dir 0750 '/Users/ci/b'\n" activation
      && hasInfix "[ -e '/data/x' ] || gitlab_runner_tart_dir 0750 '/data/x'\n" activation
      && hasInfix "owner='ci'\n" activation;
    "softnet: provisioned for any Tart runner (a job may ask for it), not for Orchard's only" =
      render.provisionSoftnet { a = { }; }
      && render.provisionSoftnet {
        a = { };
        o.backend = "orchard";
      }
      && !render.provisionSoftnet { o.backend = "orchard"; }
      && !render.provisionSoftnet { };
    "activation: softnet off removes the setuid copy" =
      hasInfix "rm -rf '/usr/local/libexec/gitlab-runner-tart'" activation;
    "activation: softnet on installs a setuid-root copy" =
      hasInfix
        "install -m 4755 -o root -g wheel '/s/bin/softnet' '/usr/local/libexec/gitlab-runner-tart/softnet'"
        (render.activationScript (cfg // { softnetSource = "/s/bin/softnet"; }));
    "nullPaths: nested attrsets and lists" =
      render.nullPaths "x" {
        a = null;
        b.c = [
          1
          null
        ];
        d = "ok";
      } == [
        "x.a"
        "x.b.c[1]"
      ];
    "escapeShellArg" = render.escapeShellArg "it's" == "'it'\\''s'";
    "volumeHostPath" =
      render.volumeHostPath "/a:/b:ro" == "/a"
      && render.volumeHostPath "/a:/b" == "/a"
      && render.volumeHostPath "a:/b" == null
      && render.volumeHostPath "/a:/b:rw" == null;
    # What the script does when stopped is run by agent-stop.sh.
    "agent script: renders, then runs gitlab-runner in the background" =
      hasInfix
        "'/d' runner-config --spec '/s.json' --output '/h/.gitlab-runner/config.toml'\ncd '/h/.gitlab-runner'\n"
        agentText
      && hasInfix
        "exec '/g' run --config '/h/.gitlab-runner/config.toml' --working-directory '/h/.gitlab-runner'\n) &\n"
        agentText;
    "agent script: its shell, then its generation" =
      builtins.substring 0 (builtins.stringLength "#!/bin/bash\ngeneration=") agentText
      == "#!/bin/bash\ngeneration=";
    "agent script without a generation record (systemd): no generation line" =
      agent.script (agentArgs // { generationFile = null; })
      == agent.body (agentArgs // { generationFile = null; });
    "agent generation: changes with the driver" =
      agent.generation agentArgs != agent.generation (agentArgs // { driver = "/d2"; });
    "agent plist settings: a constant ExitTimeOut beyond the longest drain and shutdown" =
      agent.serviceConfig.ExitTimeOut > agent.maxDrainTimeout + agent.maxShutdownTimeout;
    "gcScript: one sweep per config, status kept" =
      render.gcScript {
        driver = "/d";
        configFiles = [
          "/a.yaml"
          "/b.yaml"
        ];
        extraArgs = [ "--dry-run" ];
      } == ''
        status=0
        '/d' gc --config '/a.yaml' '--dry-run' || status=$?
        '/d' gc --config '/b.yaml' '--dry-run' || status=$?
        exit "$status"
      '';
  };
  names = attrNames checks;
in
{
  failures = filter (n: !checks.${n}) names;
  passed = length (filter (n: checks.${n}) names);
}
