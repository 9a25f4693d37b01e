"""The OpenNebula template parser and renderer used by the simulated zone."""

from __future__ import annotations

import pytest

from libs.onesim.template import Template, TemplateSyntaxError, parse_template, resolve_context

SOURCE = '''
# a web server
NAME   = "web server"   # trailing comment
CPU = 0.5
MEMORY=1024
DESCRIPTION = "line one
line two with \\"quotes\\" and # no comment"
NIC = [ NETWORK_ID = 0, MODEL = "virtio" ]
NIC = [
  NETWORK = "private"
  IP = 10.0.0.9 ]
CONTEXT = [ IP = "$NIC[IP]", ETH1 = "$NIC[IP, NETWORK=\\"private\\"]", ME = "$NAME-$VMID", MEM = "$MEMORY" ]
lower_case = bare value
'''


def test_parses_simple_vector_multiline_and_comments() -> None:
    t = parse_template(SOURCE)
    assert t.get("NAME") == "web server"
    assert t.get("CPU") == "0.5"
    assert t.get("MEMORY") == "1024"
    assert t.get("DESCRIPTION") == 'line one\nline two with "quotes" and # no comment'
    assert t.get("LOWER_CASE") == "bare value"
    nics = t.vectors("NIC")
    assert nics[0] == {"NETWORK_ID": "0", "MODEL": "virtio"}
    assert nics[1] == {"NETWORK": "private", "IP": "10.0.0.9"}


def test_text_round_trip_is_identical() -> None:
    t = parse_template(SOURCE)
    assert parse_template(t.to_text()).items == t.items


def test_xml_input_is_accepted() -> None:
    t = parse_template("<TEMPLATE><CPU>1</CPU><NIC><NETWORK_ID>3</NETWORK_ID></NIC></TEMPLATE>")
    assert t.get("CPU") == "1"
    assert t.vector("NIC") == {"NETWORK_ID": "3"}


@pytest.mark.parametrize(
    ("text", "line"),
    [('A = "unterminated\nB = 2', 1), ("A = 1\n= 2", 2), ("A = 1\nB = [ X = 1", 2), ("A 1", 1)],
)
def test_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(TemplateSyntaxError) as exc:
        parse_template(text)
    assert exc.value.line == line
    assert f"line {line}" in str(exc.value)


def test_merge_replaces_attributes_by_name() -> None:
    t = parse_template('A = 1\nNIC = [ NETWORK_ID = 0 ]\nNIC = [ NETWORK_ID = 1 ]\nB = 2')
    t.merge(parse_template('NIC = [ NETWORK_ID = 5 ]\nA = 9'))
    assert t.get("A") == "9" and t.get("B") == "2"
    assert t.vectors("NIC") == [{"NETWORK_ID": "5"}]


def test_xml_rendering_sorted_and_cdata_safe() -> None:
    t = Template([("ZED", "z"), ("ALPHA", "a]]>b"), ("V", {"Y": "2", "X": "1"})])
    xml = t.to_xml()
    assert xml.index("<ALPHA>") < xml.index("<V>") < xml.index("<ZED>")
    assert "<V><X><![CDATA[1]]></X><Y>" in xml
    assert "a]]]]><![CDATA[>b" in xml


def test_context_variables_resolve() -> None:
    t = parse_template(SOURCE)
    t.vectors("NIC")[0]["IP"] = "10.1.0.4"
    resolve_context(t, {"VMID": "42", "NAME": "web"})
    ctx = t.vector("CONTEXT")
    assert ctx == {"IP": "10.1.0.4", "ETH1": "10.0.0.9", "ME": "web-42", "MEM": "1024"}
