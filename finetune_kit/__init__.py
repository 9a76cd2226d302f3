"""A notebook-first workbook for turning a general LLM into a task specialist with parameter-efficient fine-tuning"""

__version__ = "0.0.1"
