# Carina service configuration, in the original Carina (Ruby hash) form.
#
# This file is read by Carina's config.rb importer (libs/common/carina_import.py), which parses it and never runs
# it. carina.yaml next to it is the same configuration in the native form; tests/unit/compat keeps the two equal.
#
# The endpoints point at the dev stack's two simulated OpenNebula zones (`make run`).

ENDPOINT = {
  'zone1' => {
    :proxy   => 'http://127.0.0.1:2633/RPC2',
    :oneauth => 'oneadmin:onesim',
  },
  'zone2' => {
    :proxy   => 'http://127.0.0.1:2634/RPC2',
    :oneauth => 'oneadmin:onesim',
  },
}

TEMPLATE = {
  # :file names a template text uploaded with `oneenv --upload example.vm`; Carina read it from ~/vm/.
  'example' => {
    :file       => '~/vm/example.vm',
    :cpu        => 1,
    :memory     => 1024,
    :network_id => { 'zone1' => 0, 'zone2' => 0 },
    :image_id   => { 'zone1' => 0, 'zone2' => 0 },
  },
  'cassandra' => {
    :file       => '~/vm/cassandra.vm',
    :cpu        => 2,
    :memory     => 2048,
    :network_id => { 'zone1' => 0, 'zone2' => 0 },
    :image_id   => { 'zone1' => 0, 'zone2' => 0 },
  },
}

ENVIRONMENT = {
  # A load balancer (master) in front of two Tomcat servers (slaves). The master script is called with
  # `add <ip> <slavedata>` / `delete <ip>` as slaves come and go.
  'tomcat' => {
    :type                  => "compute",
    :endpoint              => "zone1",
    :description           => "Load-balanced Tomcat cluster",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "balance.sh",
    :master_setup_time     => 2,           # seconds; the simulated zone boots VMs in no time
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat.sh",
    # The escaped quotes are Carina's shell quoting, kept exactly as written.
    :slave_context_var     => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 2,
    :slavedata             => "8080",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
  },

  # Cassandra with NFS mounts: each VM picks its mount from MOUNTLIST by SLAVE_ID (see S001 "Application
  # Storage"). The doubled backslashes survive Carina's shell and sed escaping.
  'cassandra' => {
    :type                  => "data",
    :endpoint              => "zone1",
    :description           => "Cassandra NoSQL Database",
    :placement_policy      => "stripe",
    :master_template       => "cassandra",
    :master_context_script => "",
    :master_setup_time     => 2,
    :master_context_var    => "\"MOUNTLIST=\\/vol\\/data{1-6},\"",
    :slave_template        => "cassandra",
    :slave_context_script  => "",
    :slave_context_var     => "\"SLAVE_ID=%SLAVE_INDEX%, NUM_SLAVES=%NUM_SLAVES%, SEEDS=%MASTER%, MOUNTLIST=\\/vol\\/data{1-6},\"",
    :num_slaves            => 2,
    :slavedata             => "9160",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:9160",
  },

  'hbase' => {
    :type                  => "data",
    :endpoint              => "zone1",
    :description           => "HBase data store",
    :placement_policy      => "stripe",
    :master_template       => "example",
    :master_context_script => "",
    :master_setup_time     => 2,
    :master_context_var    => "HBASE_ROLE=master",
    :slave_template        => "example",
    :slave_context_script  => "",
    :slave_context_var     => "\"HBASE_ROLE=regionserver, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 2,
    :slavedata             => "60020",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:60010",
  },

  'jenkins' => {
    :type                  => "compute",
    :endpoint              => "zone1",
    :description           => "Jenkins build master with one build agent",
    :placement_policy      => "load",
    :master_template       => "example",
    :master_context_script => "",
    :master_setup_time     => 2,
    :master_context_var    => "JENKINS_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "",
    :slave_context_var     => "\"JENKINS_MASTER=%MASTER%, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 1,
    :slavedata             => "",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:8080/jenkins",
  },

  # Members are created in order; each dependency passes the dependee's app URL as <NAME>_URL, so tomcat's
  # VMs get HBASE_URL and JENKINS_URL, and jenkins' VMs get HBASE_URL. (Seed 001 listed 'apache' as a member
  # while its dependencies named 'jenkins'; this example lists the environments it depends on.)
  'analytics' => {
    :type         => "group",
    :description  => "BI Analytics environment with Hbase data store and Tomcat cluster for processing and a Jenkins build environment",
    :members      => [ 'hbase', 'jenkins', 'tomcat' ],
    :dependencies => { 'tomcat'  => [ 'hbase', 'jenkins' ],
                       'jenkins' => [ 'hbase' ] },
  },

  # An active/passive pair in two zones. The active side recreates faulty VMs and fails over when more than
  # half of its VMs are lost; the passive side then scales out by its time-based window.
  'tomcat_ha_active' => {
    :type                  => "compute",
    :endpoint              => "zone1",
    :description           => "HA Tomcat cluster, active side",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "balance.sh",
    :master_setup_time     => 2,
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat.sh",
    :slave_context_var     => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 2,
    :slavedata             => "8080",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :availability_policy   => {
      :period         => 3,
      :recreate_expr  => "nummissing > 0 || numunknown > 0 || numfailed > 0",
      :failover_role  => "active",
      :failover_group => "tomcat-ha",
      :failover_expr  => "(numunknown + nummissing + numfailed) / numvms > 0.50",
      :failback_expr  => "numunknown == 0",
    },
  },

  # Only the load balancer runs until a failover; then the window asks for 4 VMs (master included).
  'tomcat_ha_passive' => {
    :type                  => "compute",
    :endpoint              => "zone2",
    :description           => "HA Tomcat cluster, passive side",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "balance.sh",
    :master_setup_time     => 2,
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat.sh",
    :slave_context_var     => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 0,
    :slavedata             => "8080",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :availability_policy   => {
      :period         => 3,
      :failover_role  => "passive",
      :failover_group => "tomcat-ha",
    },
    :elasticity_policy     => {
      :mode    => 'time-based',
      :windows => {
        'all' => { :spec => 'Mon-Fri 0000-2359', :min => 4 },
      },
    },
  },

  # Load-based scaling between 2 and 4 VMs (master included): up when the average CPU stays above 50% for more
  # than 3 evaluations, down when it stays below 20%.
  'tomcat_auto' => {
    :type                  => "compute",
    :endpoint              => "zone1",
    :description           => "Auto-scaled Tomcat cluster",
    :placement_policy      => "pack",
    :master_template       => "example",
    :master_context_script => "balance.sh",
    :master_setup_time     => 2,
    :master_context_var    => "BALANCE_PORT=8080",
    :slave_template        => "example",
    :slave_context_script  => "tomcat.sh",
    :slave_context_var     => "\"APP_PACKAGE=gwt-petstore.war, SLAVE_ID=%SLAVE_INDEX%\"",
    :num_slaves            => 1,
    :slavedata             => "8080",
    :adminuser             => "local",
    :app_url               => "http://%MASTER%:8080/gwt-petstore",
    :elasticity_policy     => {
      :mode           => 'auto',
      :min            => 2,
      :max            => 4,
      :priority       => 10,
      :period         => 3,
      :scaleup_expr   => 'avgcpu > 50',
      :scaledown_expr => 'avgcpu < 20',
    },
  },
}
