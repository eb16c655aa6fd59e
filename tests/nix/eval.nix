# Full evaluation of the module through nix-darwin's eval-config.nix with a stand-in pkgs.
# Needs the pinned nix-darwin and nixpkgs.lib (module-eval.sh unpacks them); returns
# { failures = [ … ]; passed = N; … } and module-eval.sh fails unless failures is empty.
{
  lib,
  nix-darwin,
  # Directory holding the test's token files (macos.token, linux.token).
  tokenDir ? "/tmp/gitlab-runner-tart-test",
  # A token value written into those files, to prove it reaches no store text.
  token ? "glrt-TEST-never-in-the-store",
  # The nix-darwin module of the README's quick start, as the README shows it.
  readmeQuickStart ? null,
}:
let
  inherit (import ./fakes.nix) fakeDrv textDrv;
  stub = {
    inherit lib;
    stdenv = {
      shell = "${fakeDrv "bash"}/bin/bash";
      hostPlatform = lib.systems.elaborate "aarch64-darwin";
      isDarwin = true;
    };
    writeText = textDrv;
    writeScript = textDrv;
    writeShellScriptBin = name: text: textDrv name text;
    writeScriptBin = name: text: textDrv name text;
    runCommand = name: _: _: fakeDrv name;
    buildEnv = a: fakeDrv a.name;
    callPackage =
      _: _:
      fakeDrv "called"
      // {
        darwin-option = fakeDrv "darwin-option";
        darwin-rebuild = fakeDrv "darwin-rebuild";
        darwin-version = fakeDrv "darwin-version";
      };
  }
  // lib.genAttrs [
    "nix"
    "zsh"
    "nix-zsh-completions"
    "texinfoInteractive"
    "bashInteractive"
    "nix-info"
    "coreutils"
    "gnugrep"
    "tart"
    "gitlab-runner"
    "softnet"
    # Only for the full activate script:
    "jq"
    "openssh"
    "gnused"
    "rsync"
  ] fakeDrv;

  driver = fakeDrv "gitlab-runner-tart-driver";

  # A whole nix-darwin system: our module, `host` (the host's own configuration) and `extra`.
  evalSystem =
    host: extra:
    import "${nix-darwin}/eval-config.nix" {
      inherit lib;
      # nix-darwin-26.05 checks for a 26.05 lib; the nixpkgs.lib checkout is 26.11pre.
      enableNixpkgsReleaseCheck = false;
      modules = [
        (
          { lib, ... }:
          {
            _module.args.pkgs = lib.mkForce stub;
            nixpkgs.hostPlatform = "aarch64-darwin";
          }
        )
        ../../darwin-modules
        { services.gitlab-runner-tart.package = driver; }
        host
      ]
      ++ extra;
    };

  evalHost =
    extra:
    evalSystem ./example-host.nix (
      [
        {
          services.gitlab-runner-tart = {
            runners.macos.authenticationTokenFile = lib.mkForce "${tokenDir}/macos.token";
            runners.linux.authenticationTokenFile = lib.mkForce "${tokenDir}/linux.token";
          };
        }
      ]
      ++ extra
    );

  # The configurations every change must build: nix-darwin shellchecks each one's whole
  # `activate` script (see activateScripts).
  oneRunner = extra: {
    system.primaryUser = "ci";
    system.stateVersion = 6;
    nixpkgs.config.allowUnfreePackages = [ "tart" ];
    services.gitlab-runner-tart = {
      enable = true;
      runners.macos = {
        url = "https://gitlab.example.com";
        authenticationTokenFile = "/Users/ci/.config/gitlab-runner/macos.token";
      }
      // extra;
    };
  };
  systems = {
    readme-quick-start = evalSystem (
      if readmeQuickStart == null then throw "pass readmeQuickStart" else readmeQuickStart
    ) [ ];
    # One VM at a time, so no Softnet either.
    no-builds-or-cache-dirs = evalSystem (oneRunner { }) [
      { services.gitlab-runner-tart.concurrency = 1; }
    ];
    volumes = evalSystem (oneRunner {
      volumes = [
        "/Users/ci/tart/shared:/Volumes/shared:ro"
        "/opt/data:/Volumes/data"
      ];
    }) [ ];
    two-runners = good;
    linux-guests-only =
      evalSystem (oneRunner { defaultImage = "ghcr.io/cirruslabs/ubuntu:latest"; })
        [
          {
            services.gitlab-runner-tart = {
              concurrency = 6;
              linuxGuestsOnly = true;
            };
          }
        ];
    # A user that already exists on the Mac (created in System Settings, so not in
    # users.knownUsers), declared the usual way.
    user-without-home = evalSystem (oneRunner { }) [ { users.users.ci = { }; } ];
    # A user that nix-darwin creates: with a home, as the assertion on `knownUsers` asks.
    known-user-with-home = evalSystem (oneRunner { }) [ knownUserWithHome ];
    # A Mac whose runner sends jobs to an Orchard fleet: more than 2 at once.
    orchard-runner =
      evalSystem
        (oneRunner {
          backend = "orchard";
          orchard = {
            url = "https://orchard.example.com:6120";
            serviceAccount = "gitlab-runner";
            tokenFile = "/Users/ci/.config/gitlab-runner/orchard.token";
          };
        })
        [ { services.gitlab-runner-tart.concurrency = 6; } ];
  };
  # Each system's `activate` as nix-darwin writes it (with @out@ substituted).
  activateScripts = lib.mapAttrs (
    _: e:
    builtins.replaceStrings
      [ "@out@" ]
      [ "/nix/store/00000000000000000000000000000000-darwin-system" ]
      e.config.system.activationScripts.script.text
  ) systems;

  knownUserWithHome = {
    users.knownUsers = [ "ci" ];
    # As docs/nix-darwin.md shows it.
    users.users.ci = {
      uid = 550;
      home = "/Users/ci";
      createHome = true;
      shell = "/bin/zsh";
      isHidden = false;
    };
  };
  # The same user without `home`: nix-darwin would create it with /var/empty.
  knownUserWithoutHome = evalSystem (oneRunner { }) [
    {
      users.knownUsers = [ "ci" ];
      users.users.ci.uid = 550;
    }
  ];
  knownUserMessage = "users.users.ci.home is not set, but ci is in users.knownUsers, so nix-darwin creates ci with the home directory /var/empty, where Tart cannot keep its VMs; set users.users.ci.home = \"/Users/ci\"; users.users.ci.createHome = true; (a ci created earlier with /var/empty also needs: sudo dscl . -create /Users/ci NFSHomeDirectory /Users/ci)";

  good = evalHost [ ];
  cfgOf = e: e.config.services.gitlab-runner-tart;
  agentNames = [
    "gitlab-runner-tart"
    "gitlab-runner-tart-config"
    "gitlab-runner-tart-logs"
    "gitlab-runner-tart-gc"
  ];
  plistOf = name: e: untab e.config.environment.userLaunchAgents."org.nixos.${name}.plist".text;
  agentPlistOf = plistOf "gitlab-runner-tart";
  configPlistOf = plistOf "gitlab-runner-tart-config";
  agentScriptOf = e: e.config.environment.etc."gitlab-runner-tart/agent".source.text;
  activationOf = e: e.config.system.activationScripts.launchd.text;
  settingsChanged = evalHost [
    {
      services.gitlab-runner-tart.runners.macos = {
        limit = lib.mkForce 1;
        defaultImage = lib.mkForce "ghcr.io/cirruslabs/macos-tahoe-base:latest";
        extraConfig.output_limit = 8192;
      };
    }
  ];
  driverUpgraded = evalHost [
    {
      services.gitlab-runner-tart.package = lib.mkForce (fakeDrv "gitlab-runner-tart-driver-next");
    }
  ];
  runnerUpgraded = evalHost [
    { services.gitlab-runner-tart.gitlabRunnerPackage = fakeDrv "gitlab-runner-next"; }
  ];
  tartUpgraded = evalHost [ { services.gitlab-runner-tart.tartPackage = fakeDrv "tart-next"; } ];
  shortDrain = evalHost [ { services.gitlab-runner-tart.drainTimeout = 600; } ];
  oneAtATime = evalHost [ { services.gitlab-runner-tart.concurrency = lib.mkForce 1; } ];
  shutdownSet = evalHost [ { services.gitlab-runner-tart.shutdownTimeout = 120; } ];
  movedLogs = evalHost [ { services.gitlab-runner-tart.logDir = "/Users/ci/logs"; } ];
  stateMoved = evalHost [ { services.gitlab-runner-tart.stateDir = "/Users/ci/runner-state"; } ];
  moreTools = evalHost [ { services.gitlab-runner-tart.extraPackages = [ (fakeDrv "git") ]; } ];
  # Configurations that must leave the runner's plist as it is (nix-darwin would reload it).
  samePlist = {
    inherit
      settingsChanged
      driverUpgraded
      runnerUpgraded
      tartUpgraded
      shortDrain
      oneAtATime
      shutdownSet
      movedLogs
      stateMoved
      moreTools
      ;
    readme = systems.readme-quick-start;
    volumes = systems.volumes;
    linux-guests-only = systems.linux-guests-only;
  };
  generationOf = e: lib.head (builtins.match ".*\ngeneration=([0-9a-f]+)\n.*" (agentScriptOf e));
  postActivationOf = e: e.config.system.activationScripts.postActivation.text;
  # Where the running agent records its generation, whatever the options.
  agentRecord = "/var/db/gitlab-runner-tart/agent-generation";
  c = good.config;
  r = (cfgOf good).rendered;

  # toPlist indents with tabs; drop them so that checks can match key/value pairs.
  untab = builtins.replaceStrings [ "\t" ] [ "" ];
  agentPlist = untab c.environment.userLaunchAgents."org.nixos.gitlab-runner-tart.plist".text;
  gcPlist = untab c.environment.userLaunchAgents."org.nixos.gitlab-runner-tart-gc.plist".text;
  agentScript = agentScriptOf good;
  gcScript = c.environment.etc."gitlab-runner-tart/gc".source.text;
  configPlist = configPlistOf good;
  configScript = c.launchd.user.agents.gitlab-runner-tart-config.command.text;
  logsPlist = plistOf "gitlab-runner-tart-logs" good;
  logsScript = c.environment.etc."gitlab-runner-tart/logs".source.text;
  activation = c.system.activationScripts.launchd.text;
  specText = r.specFile.text;
  spec = builtins.fromJSON specText;
  yamls = lib.mapAttrs (_: f: builtins.fromJSON f.text) r.driverConfigFiles;
  storeTexts = [
    specText
    agentPlist
    gcPlist
    agentScript
    gcScript
    configPlist
    configScript
    logsPlist
    logsScript
    activation
  ]
  ++ map (f: f.text) (lib.attrValues r.driverConfigFiles);

  failedMessages =
    e: map (a: a.message) (lib.filter (a: !a.assertion) (cfgOf e).rendered.assertions);
  # Our assertions must also reach nix-darwin's `assertions` (forcing only ours).
  inDarwinAssertions =
    e: msg: lib.any (a: (builtins.tryEval (a.message == msg)).value or false) e.config.assertions;

  # A setting refused at evaluation: exactly one of our assertions fails, its message starts
  # with the option's name, and it reaches nix-darwin's assertions.
  refusedAt =
    option: settings:
    let
      msgs = failedMessages (evalHost [ { services.gitlab-runner-tart = settings; } ]);
    in
    builtins.length msgs == 1 && lib.hasPrefix option (builtins.head msgs);
  runnerAt = "services.gitlab-runner-tart.runners.macos";
  refusals = {
    "extraConfig.concurrent" = refusedAt "services.gitlab-runner-tart.extraConfig.concurrent" {
      extraConfig.concurrent = 4;
    };
    "extraConfig.check_interval" =
      refusedAt "services.gitlab-runner-tart.extraConfig.check_interval"
        { extraConfig.check_interval = 10; };
    "extraConfig.runners" = refusedAt "services.gitlab-runner-tart.extraConfig.runners" {
      extraConfig.runners = [ ];
    };
    "a null in extraConfig" =
      refusedAt "services.gitlab-runner-tart.extraConfig.session_server.listen_address"
        { extraConfig.session_server.listen_address = null; };
    "runner extraConfig.token" = refusedAt "${runnerAt}.extraConfig.token" {
      runners.macos.extraConfig.token = "glrt-x";
    };
    "runner extraConfig.limit" = refusedAt "${runnerAt}.extraConfig.limit" {
      runners.macos.extraConfig.limit = 5;
    };
    "runner extraConfig.executor" = refusedAt "${runnerAt}.extraConfig.executor" {
      runners.macos.extraConfig.executor = "shell";
    };
    "runner extraConfig.custom.prepare_args" =
      refusedAt "${runnerAt}.extraConfig.custom.prepare_args"
        { runners.macos.extraConfig.custom.prepare_args = [ "prepare" ]; };
    "runner extraConfig.custom.run_exec" = refusedAt "${runnerAt}.extraConfig.custom.run_exec" {
      runners.macos.extraConfig.custom.run_exec = "/bin/sh";
    };
    "a null in runner extraConfig" = refusedAt "${runnerAt}.extraConfig.cache" {
      runners.macos.extraConfig.cache = null;
    };
    "settings.concurrency" = refusedAt "${runnerAt}.settings.concurrency" {
      runners.macos.settings.concurrency = 4;
    };
    "settings.state_dir" = refusedAt "${runnerAt}.settings.state_dir" {
      runners.macos.settings.state_dir = "/tmp/other";
    };
    "an empty name" = refusedAt "${runnerAt}.name" { runners.macos.name = lib.mkForce " "; };
    "a relative token file" = refusedAt "${runnerAt}.authenticationTokenFile" {
      runners.macos.authenticationTokenFile = lib.mkOverride 10 "macos.token";
    };
  };
  # Timeouts stay the admin's to set.
  allowedCustom = failedMessages (evalHost [
    { services.gitlab-runner-tart.runners.macos.extraConfig.custom.prepare_exec_timeout = 1800; }
  ]);

  tooMany = evalHost [ { services.gitlab-runner-tart.concurrency = lib.mkForce 3; } ];
  tooManyLinux = evalHost [
    {
      services.gitlab-runner-tart.concurrency = lib.mkForce 3;
      services.gitlab-runner-tart.linuxGuestsOnly = true;
    }
  ];
  noPrimary = evalHost [ { system.primaryUser = lib.mkForce null; } ];
  storeToken = evalHost [
    {
      services.gitlab-runner-tart.runners.macos.authenticationTokenFile =
        lib.mkOverride 10 "/nix/store/00000000000000000000000000000000-macos.token";
    }
  ];

  has = s: text: lib.hasInfix s text;
  toolPath = lib.concatStringsSep ":" [
    "/usr/local/libexec/gitlab-runner-tart"
    "${driver}/bin"
    "${stub.tart}/bin"
    "${stub.gitlab-runner}/bin"
    "/usr/bin"
    "/bin"
    "/usr/sbin"
    "/sbin"
  ];

  checks = lib.mapAttrs' (n: v: lib.nameValuePair "refused at evaluation: ${n}" v) refusals // {
    "agent plist: label" = has "<string>org.nixos.gitlab-runner-tart</string>" agentPlist;
    "agent plist: KeepAlive" = has "<key>KeepAlive</key>\n<true/>" agentPlist;
    "agent plist: RunAtLoad" = has "<key>RunAtLoad</key>\n<true/>" agentPlist;
    "agent plist: runs the fixed path /etc/gitlab-runner-tart/agent after wait4path" =
      has "/bin/wait4path /nix/store &amp;&amp; exec /etc/gitlab-runner-tart/agent" agentPlist;
    "agent plist: names no store path, so no package version" = !(has "/nix/store/" agentPlist);
    "/etc/gitlab-runner-tart/agent is this generation's script" =
      c.environment.etc."gitlab-runner-tart/agent".source.outPath
      == (cfgOf good).rendered.agentScript.outPath;
    "agent script: logs to the log dir" =
      has "exec >>'/Users/ci/Library/Logs/gitlab-runner-tart/gitlab-runner.log' 2>&1" agentScript;
    "agent script: HOME" = has "export HOME='/Users/ci'" agentScript;
    "agent script: PATH has softnet's dir, driver, tart, gitlab-runner, system dirs" =
      has "export PATH='${toolPath}'" agentScript;
    "agent script: records its generation at a path no option changes" =
      has "printf '%s\\n' \"$generation\" >'${agentRecord}'" agentScript;
    "switch moving stateDir: a new generation, whose activation reads the agent's record" =
      generationOf stateMoved != generationOf good
      && has "cat '${agentRecord}'" (postActivationOf stateMoved);
    "upgrade from the record in stateDir: activation reads it once, then removes it" =
      let
        legacy = "'/Users/ci/.gitlab-runner/.tart-agent-generation'";
      in
      has "running=$(cat ${legacy} 2>/dev/null)" (postActivationOf good)
      && has "rm -f -- ${legacy}" (postActivationOf good)
      && has "rm -f -- '${agentRecord}' ${legacy}" activation;
    "activation: the record's directory is the user's, before agents are loaded" =
      has "dir='/var/db/gitlab-runner-tart'" activation
      && has "chown -- \"$owner:$(id -gn -- \"$owner\")\" \"$dir\"" activation;
    "agent plist: Interactive" = has "<string>Interactive</string>" agentPlist;
    "agent script: renders config.toml from the spec at its stable path" =
      has
        "'${driver}/bin/gitlab-runner-tart-driver' runner-config --spec '/etc/gitlab-runner-tart/spec.json' --output '/Users/ci/.gitlab-runner/config.toml'"
        agentScript;
    "the stable spec path is the current spec" =
      c.environment.etc."gitlab-runner-tart/spec.json".source.outPath == r.specFile.outPath;
    "agent script: runs gitlab-runner" =
      has
        "'${stub.gitlab-runner}/bin/gitlab-runner' run --config '/Users/ci/.gitlab-runner/config.toml'"
        agentScript;
    "agent script: launchd's SIGTERM becomes SIGQUIT, then SIGTERM after the drain" =
      has "trap drain TERM INT" agentScript
      && has "kill -QUIT \"$runner\"" agentScript
      && has "sleep 3600" agentScript;
    "agent plist: launchd's SIGKILL waits for the longest drain and shutdown allowed" =
      has "<key>ExitTimeOut</key>\n<integer>90060</integer>" agentPlist;
    "every agent loads only in the GUI (Aqua) session" = lib.all (
      name:
      has "<key>LimitLoadToSessionType</key>\n<string>Aqua</string>" (
        untab c.environment.userLaunchAgents."org.nixos.${name}.plist".text
      )
    ) agentNames;
    "config agent: renders the spec in the store, at load and when a token file changes" =
      has "runner-config --spec '${r.specFile}'" configScript
      && has "<key>RunAtLoad</key>\n<true/>" configPlist
      && has (lib.concatStringsSep "\n" [
        "<key>WatchPaths</key>"
        "<array>"
        "<string>${tokenDir}/linux.token</string>"
        "<string>${tokenDir}/macos.token</string>"
        "</array>"
      ]) configPlist;
    "switch changing only runner settings: the runner's script is unchanged" =
      agentScriptOf settingsChanged == agentScript;
    "switch changing only runner settings: config.toml is rendered again" =
      configPlistOf settingsChanged != configPlist;
    "the runner's plist is the same text in every configuration" = lib.all (
      e: agentPlistOf e == agentPlist
    ) (lib.attrValues samePlist);
    "the gc and logs agents' plists are the same text in every configuration" = lib.all (
      e:
      plistOf "gitlab-runner-tart-gc" e == gcPlist
      && plistOf "gitlab-runner-tart-logs" e == logsPlist
    ) (lib.attrValues samePlist);
    "gc script: the agents' PATH and HOME, logs to gc.log" =
      has "export PATH='${toolPath}'" gcScript
      && has "export HOME='/Users/ci'" gcScript
      && has "exec >>'/Users/ci/Library/Logs/gitlab-runner-tart/gc.log' 2>&1" gcScript;
    "switch upgrading the driver, gitlab-runner or Tart: a new generation (a drained restart)" =
      lib.all (e: generationOf e != generationOf good) [
        driverUpgraded
        runnerUpgraded
        tartUpgraded
      ];
    "switch changing only runner settings, concurrency or shutdownTimeout: same generation" =
      lib.all (e: generationOf e == generationOf good) [
        settingsChanged
        oneAtATime
        shutdownSet
      ];
    "the generation is the hash of the script without its generation line" =
      generationOf good
      == builtins.hashString "sha256" (
        builtins.replaceStrings [ "generation=${generationOf good}\n" ] [ "" ] agentScript
      );
    "activation: after everything, drains an agent of another generation" =
      lib.all (s: has s (postActivationOf good)) [
        "# gitlab-runner-tart: the runner's agent takes up this generation"
        "!= '${generationOf good}' ]"
        "launchctl kill SIGTERM \"gui/$uid/org.nixos.gitlab-runner-tart\""
        "cat '${agentRecord}'"
      ];
    "activation: warns before loading agents when the user has no GUI session" =
      has "ci is not logged in to the GUI" activation;
    "drainTimeout sets the drain, not the plist" =
      has "sleep 600" (agentScriptOf shortDrain)
      && has "at most 600 s" (postActivationOf shortDrain);
    "logs agent: rotates the three logs hourly" =
      has "<key>StartInterval</key>\n<integer>3600</integer>" logsPlist
      && lib.all (l: has "'/Users/ci/Library/Logs/gitlab-runner-tart/${l}'" logsScript) [
        "gitlab-runner.log"
        "config.log"
        "gc.log"
      ]
      && has "-gt 10485760" logsScript;
    "user declared with a home: nix-darwin's primaryUserHome is used" =
      let
        e = evalHost [ { users.users.ci.home = "/Volumes/Data/ci"; } ];
      in
      (cfgOf e).stateDir == "/Volumes/Data/ci/.gitlab-runner"
      && e.config.system.primaryUserHome == "/Volumes/Data/ci";
    "existing user declared without home (not in knownUsers): home is /Users/<user>" =
      (cfgOf systems.user-without-home).stateDir == "/Users/ci/.gitlab-runner"
      && has "home='/Users/ci'" (activationOf systems.user-without-home)
      && failedMessages systems.user-without-home == [ ];
    "the runner, config and gc agents run only when HOME is the user's home in the user database" =
      lib.all
        (
          script:
          has "home_db=$(dscl . -read '/Users/ci' NFSHomeDirectory" script
          && has "home_want='/Users/ci'" script
        )
        [
          agentScript
          gcScript
          configScript
        ];
    "the logs agent rotates the logs whatever the home (refusals add lines to them)" =
      !(has "dscl" logsScript);
    "a switch stops before activation when the user's home is not the one the agents use" =
      has "# gitlab-runner-tart: the runner user's home directory" c.system.checks.text
      && has "home_want='/Users/ci'" c.system.activationScripts.checks.text;
    "user nix-darwin creates, without home: refused at evaluation, naming the fix" =
      failedMessages knownUserWithoutHome == [ knownUserMessage ]
      && inDarwinAssertions knownUserWithoutHome knownUserMessage;
    "user nix-darwin creates, with home: all our assertions hold, nix-darwin creates the home" =
      failedMessages systems.known-user-with-home == [ ]
      && (cfgOf systems.known-user-with-home).stateDir == "/Users/ci/.gitlab-runner"
      && has "sysadminctl -addUser ci -UID 550 -GID 20 -home /Users/ci -shell /bin/zsh" (
        activateScripts.known-user-with-home
      )
      && has "createhomedir -cu ci >" activateScripts.known-user-with-home;
    "allowed: [runners.custom] timeouts" = allowedCustom == [ ];
    "gc plist: StartInterval" = has "<key>StartInterval</key>\n<integer>3600</integer>" gcPlist;
    "gc script: sweeps with each driver config" = lib.all (
      f: has "gc --config '${f}'" gcScript
    ) (lib.attrValues r.driverConfigFiles);
    "user agent requires the primary user" =
      lib.elem
        "launchd.user.agents.gitlab-runner-tart"
        c.system.requiresPrimaryUser;
    "spec: concurrent = 2" = spec.concurrent == 2;
    "spec: every runner's concurrency equals concurrent" = lib.all (
      x: x.concurrency == spec.concurrent
    ) spec.runners;
    "spec: token file paths, sorted runners" =
      map (x: x.token_file) spec.runners == [
        "${tokenDir}/linux.token"
        "${tokenDir}/macos.token"
      ];
    "spec: names" = map (x: x.name) spec.runners == [
      "tart-linux"
      "macos"
    ];
    "spec: driver and its config" = lib.all (
      x:
      x.driver == "${driver}/bin/gitlab-runner-tart-driver"
      && lib.hasPrefix "/nix/store/" x.driver_config
    ) spec.runners;
    "spec: extraConfig" = (builtins.head spec.runners).extra == {
      request_concurrency = 2;
    };
    "no token in any store text" = !(lib.any (has token) storeTexts);
    "driver yaml: macos" = yamls.macos == {
      tart_executable = "${stub.tart}/bin/tart";
      concurrency = 2;
      softnet = true;
      builds_dir = "/Users/ci/tart/builds";
      cache_dir = "/Users/ci/tart/cache";
      volumes = [ "/Users/ci/tart/shared:/Volumes/shared:ro" ];
      allow_images = [ "^ghcr\\.io/cirruslabs/macos-.*$" ];
      default_image = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest";
      pull_policy = "if-not-present";
      ssh_username = "admin";
      ssh_password_file = "/Users/ci/.config/gitlab-runner/guest-password";
      cpu = "auto";
      memory = "auto";
    };
    "driver yaml: linux with settings" = yamls.linux == {
      tart_executable = "${stub.tart}/bin/tart";
      concurrency = 2;
      softnet = true;
      cache_dir = "/Users/ci/tart/cache";
      default_image = "ghcr.io/cirruslabs/ubuntu:latest";
      cpu = 4;
      memory = 8192;
      macos_vm_limit = 2;
    };
    "good config: all our assertions hold" = failedMessages good == [ ];
    "good config: no warnings" = c.warnings == [ ];
    "concurrency 3: assertion fires" =
      lib.any (lib.hasPrefix "services.gitlab-runner-tart.concurrency is 3") (
        failedMessages tooMany
      )
      && builtins.length (failedMessages tooMany) == 1;
    "concurrency 3: reaches nix-darwin's assertions" = inDarwinAssertions tooMany (
      builtins.head (failedMessages tooMany)
    );
    "concurrency 3 with linuxGuestsOnly: allowed" = failedMessages tooManyLinux == [ ];
    "concurrency 3: spec and yaml follow" =
      (builtins.fromJSON (cfgOf tooManyLinux).rendered.specFile.text).concurrent == 3
      && (cfgOf tooManyLinux).rendered.driverConfigs.macos.concurrency == 3;
    "no primary user: assertion fires" =
      lib.any (lib.hasPrefix "services.gitlab-runner-tart.user is not set")
        (failedMessages noPrimary);
    "token file in the store: warning" =
      lib.any (lib.hasInfix "authenticationTokenFile (/nix/store/")
        storeToken.config.warnings;
  }
  // import ./eval-host.nix {
    inherit
      lib
      has
      stub
      evalHost
      cfgOf
      activationOf
      agentScriptOf
      configPlistOf
      failedMessages
      refusedAt
      runnerAt
      systems
      oneAtATime
      toolPath
      activation
      agentPlistOf
      agentPlist
      c
      ;
  };
in
{
  failures = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);
  passed = lib.length (lib.attrNames (lib.filterAttrs (_: ok: ok) checks));
  inherit specText activation activateScripts;
  yamlTexts = lib.mapAttrs (_: f: f.text) r.driverConfigFiles;
  agentScriptText = agentScript;
  inherit gcScript logsScript;
  warmYamlText =
    let
      e = evalHost [ { services.gitlab-runner-tart.runners.macos.warm.pool = 1; } ];
    in
    (cfgOf e).rendered.driverConfigFiles.macos.text;
  # With a warm pool, so that the script has its `warm` line.
  configScriptText =
    let
      e = evalHost [ { services.gitlab-runner-tart.runners.macos.warm.pool = 1; } ];
    in
    e.config.launchd.user.agents.gitlab-runner-tart-config.command.text;
  agentPlistText = agentPlist;
  # A switch that moves stateDir (tests/nix/agent-activation.sh runs it): the running agent's
  # script, and the next generation's activation, before and after nix-darwin loads agents.
  stateMovedSwitch = {
    runningAgent = agentScript;
    prepare = activationOf stateMoved;
    activation = postActivationOf stateMoved;
  };
}
