# Fails unless README.md contains examples/quickstart.cpp verbatim inside a ```cpp block.
file(READ ${README} readme)
file(READ ${SNIPPET} snippet)
string(FIND "${readme}" "```cpp\n${snippet}```" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "README.md does not contain ${SNIPPET} verbatim in a ```cpp block")
endif()
